"""Pipeline stages, from configuration and file paths to files on disk.

One module per stage (``seeds``, ``segment``, ``stitch``, ``publish``, ``evaluate``); the
Snakemake scripts and the ``ffnflow`` command line both call these, so a stage behaves the
same with or without Snakemake. Each stage module imports only what it uses, so the hash of
its import closure (:mod:`ffnflow.codehash`) tells Snakemake when its code changed.
"""
