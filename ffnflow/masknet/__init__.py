"""The mask network: per-voxel boundary and exclusion probabilities that gate seeds and FFN.

One concept per module: ``model`` (the residual 3D U-Net and its checkpoints), ``targets``
(training targets from ground truth), ``defects`` (synthetic imaging defects),
``training`` (the training loop), ``prediction`` (block-wise prediction with context).
"""
