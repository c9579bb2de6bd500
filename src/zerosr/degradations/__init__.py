"""`python -m zerosr.degradations`: measure target images, preview the realistic training pairs.

The pipeline itself lives in `zerosr.data.realistic` (and the estimators in `zerosr.data.estimate`);
this package is the command line around them.
"""
