"""Layer 1, core: errors, paths, atomic artefacts and checksums, the generic config machinery, checks, DDP helpers.

Imports nothing else of the package.
"""
