"""Helpers the Snakemake rules call: resource sizing from the artifacts themselves."""
