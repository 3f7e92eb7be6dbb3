"""Layer 2, images: image sources, the prepared cache, streaming, datasets on the device, batched augmentation.

Imports ``desupcon.core`` only.
"""
