"""``python -m tradebotd.replay``: run the replay server (see ``tradebotd.replay.cli``)."""

import sys

from tradebotd.replay.cli import main

sys.exit(main())
