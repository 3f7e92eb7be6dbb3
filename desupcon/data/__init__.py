"""Layer 2, data: image sources, the prepared cache, streaming, datasets on the device, batched augmentation.

Imports ``desupcon.core`` only.
"""
