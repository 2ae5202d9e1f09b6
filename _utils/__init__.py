"""The logic of the ELECTRA toolkit, imported by the notebooks and the scripts generated from them.

One file per concern: config, text, electra, optim, callbacks, glue (see README.md).
"""
