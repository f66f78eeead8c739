"""End to end on inputs nobody here wrote: real models, other exporters, the corpus."""
