# The two quick-start commands: `make up` (serve the default model) and `make test` (the whole suite).
.PHONY: setup up test

setup:
	@bash scripts/setup.sh

up: setup
	.venv/bin/pdserve up $(ARGS)

test: setup
	bash scripts/test.sh $(ARGS)
