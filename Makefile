# The notebooks are the source: the scripts are generated from them with nbconvert, leaving out the cells tagged
# `notebook-only` (pictures, tables, peeks at tensors).
#   make scripts      pretrain.py, finetune.py and detect.py from their notebooks (tests/test_scripts.py checks
#                     they match)
#   make notebooks    run the notebooks at demo scale, keep their outputs (minus execution counts and other
#                     metadata that change on every run), then regenerate the scripts
#   make lock         requirements.lock: every package, pinned, of a fresh environment made from requirements.txt
#                     (`pip install -r requirements.lock` gives a user the environment the tests ran in)
OUT ?= .
SCRIPT = jupyter nbconvert --to python --log-level WARN --output-dir $(OUT) \
	--TagRemovePreprocessor.enabled=True --TagRemovePreprocessor.remove_cell_tags notebook-only \
	--PythonExporter.exclude_input_prompt=True

# $(call script,NAME,NOTEBOOK): NAME.py from NOTEBOOK, its second line (nbconvert's "coding: utf-8") naming its source
script = $(SCRIPT) --output $(1) $(2) && \
	sed -i '2s/.*/\# Generated from $(2) by `make scripts`: edit the notebook, not this file./' $(OUT)/$(1).py

LOCK_ENV ?= /tmp/electra-lock-env

.PHONY: scripts notebooks lock
scripts:
	$(call script,pretrain,Pretrain.ipynb)
	$(call script,finetune,Finetune_GLUE.ipynb)
	$(call script,detect,Detect_and_Correct.ipynb)

notebooks:
	ELECTRA_ARGS= jupyter nbconvert --to notebook --execute --inplace --log-level WARN \
		--ExecutePreprocessor.timeout=3600 Pretrain.ipynb Finetune_GLUE.ipynb Detect_and_Correct.ipynb
	nbstripout --keep-output Pretrain.ipynb Finetune_GLUE.ipynb Detect_and_Correct.ipynb
	$(MAKE) --no-print-directory scripts

lock:
	rm -rf $(LOCK_ENV) && python -m venv $(LOCK_ENV)
	$(LOCK_ENV)/bin/python -m pip install -q -r requirements.txt
	{ echo '# Every package of an environment made by `pip install -r requirements.txt` (`make lock`, $(shell date +%F),'; \
	  echo '# Python $(shell python -c "import platform; print(platform.python_version())")): the versions the tests ran with.'; \
	  echo '# pip install -r requirements.lock'; \
	  $(LOCK_ENV)/bin/python -m pip freeze --exclude-editable; } > requirements.lock
	rm -rf $(LOCK_ENV)
