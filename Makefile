# Shortcuts for the commands in the README; each target is one recsmith command.
CHAIN ?= configs/chains/mtl_funnel.yaml
ARGS ?=

.PHONY: install chain chain-resume chain-dry-run chain-validate chain-summary test

install:
	pip install -e '.[test]'

chain:
	recsmith chain run $(CHAIN) $(ARGS)

chain-resume:
	recsmith chain run $(CHAIN) --resume $(ARGS)

chain-dry-run:
	recsmith chain run $(CHAIN) --dry-run $(ARGS)

chain-validate:
	recsmith chain validate $(CHAIN) $(ARGS)

chain-summary:
	recsmith chain summarize $(CHAIN) $(ARGS)

test:
	pytest
