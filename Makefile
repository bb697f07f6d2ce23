# The two commands a newcomer needs; both do the whole set-up first (scripts/setup.sh: Debian packages
# when run as root, else the apt-get line to run; .venv with the pinned CPU torch; the package).
#   make demo   fit, evaluate and classify on real recordings with a small pretrained backbone
#   make test   the test suite, exactly as CI runs it (.ci/run)

.PHONY: setup demo test

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/calm demo

test: setup
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q
