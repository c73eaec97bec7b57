"""``python -m privfl``: the ``privfl`` command line (:mod:`privfl.cli`)."""

from privfl.cli import main

raise SystemExit(main())
