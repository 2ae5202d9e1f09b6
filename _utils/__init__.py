"""The logic of the ELECTRA toolkit, imported by the notebooks and the scripts generated from them.

One file per concern, each importing only from the layers below it (README.md, "What is where"; .importlinter).
"""
