"""The run directory: its file names (layout), its lineage record and the
artifacts later stages load from it.

Import the submodules (`lifejax.run.layout`, `.lineage`, `.artifacts`)
directly: this package imports none of them, so `layout` (a leaf module)
can be used from train/ without pulling in artifacts' dependencies.
"""
