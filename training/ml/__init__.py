"""Framework-free model training for the RLHF platform (reward models).

Must never import django or celery: it runs as a plain subprocess (or under torchrun) and talks
to the web side only through files: JSONL in, a model directory with metadata.json out, progress
as JSON lines. Importing this package is cheap; torch/transformers load in the submodules.
"""
