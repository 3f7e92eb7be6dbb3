"""Self-supervised runs on two views of each image: MoCo-v3, SimCLR and KD from a frozen teacher."""

from desupcon.methods.ssl import moco_v3, simclr, vit_kd  # noqa: F401  (each registers its task)
