"""ffnflow: flood-filling network (FFN) connectomics pipeline.

The package holds the algorithms; the Snakemake workflow (``Snakefile``, ``rules/``) and
``scripts/`` only call into it. Arrays are numpy, axes always z, y, x; sizes in voxels,
physical units in nm unless a name says otherwise.
"""

__version__ = "0.1.0"
