"""`python -m isda_exp.explain RUN_DIR`: look inside a finished (or checkpointed) run.

What ISDA augments, made visible on the run's own data: the top eigenvectors of the class
covariances (semantic directions) with the training images ordered along them, augmented features
shown through their nearest training images, the label-keep rate against lambda, and the Monte
Carlo expected cross-entropy against ISDA's closed-form bound (Eq. 4). Everything is written into
RUN_DIR/explain/ (PNG figures, explain.json, explain.md); nothing else in the run changes.

Modules, one job each: run (the run directory and its checkpoint), rebuild (config -> objects,
the only caller of isda_exp.training.build), source (the images of CIFAR arrays or an image folder, in
batches and by index), features (batched extraction, cached), covariance, directions,
neighbours, bound, figures, page, pipeline (the steps in order), cli.
"""
