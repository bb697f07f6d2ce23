# The two commands a newcomer needs; both do the whole set-up first (scripts/setup.sh: Debian packages
# when run as root, else the apt-get line to run; .venv with the pinned CPU torch; the package).
#   make demo   fit, evaluate and classify on real recordings with a small pretrained backbone
#   make test   the test suite, exactly as CI runs it (.ci/run)
# For maintainers: make lock (refresh requirements/lock.txt), make check-latest (the tests on the newest
# releases the ranges allow, to see upstream breakage before it reaches the lock).

.PHONY: setup demo test lock check-latest

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/calm demo

test: setup
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q

lock:
	bash scripts/lock.sh

check-latest:
	bash scripts/check-latest.sh
