"""FFN training with the reference recipe (google/ffn ``compute_partitions``,
``build_coordinates``, ``train``), one concept per module:

- :mod:`.partitions`: partitions of a label volume by local object fraction;
- :mod:`.coordinates`: partition-balanced training centres of a dataset, cached as a file;
- :mod:`.sampler`: draws centres equally from every partition, over several datasets;
- :mod:`.augment`: reflections, y/x transpose, intensity jitter, missing/shifted sections;
- :mod:`.moves`: the fixed +-delta FOV movement policy of training;
- :mod:`.examples`: one training example (image, soft target, seed, moves) from a volume;
- :mod:`.prefetch`: examples made in a background thread, in a fixed order;
- :mod:`.trainer`: the optimisation loop state (model, optimizer, examples in flight);
- :mod:`.validation`: loss and flood-filling quality on a held-out crop;
- :mod:`.curves`: the CSV log and the PNG of the loss curves;
- :mod:`.run`: a whole run with checkpoints, exact resume, signals and validation.
"""
