"""Layer 2, nn: networks (CIFAR ResNets, ViT-S/16, timm), heads and the MLP builder, losses, memory bank and queue.

Imports ``desupcon.core`` only.
"""
