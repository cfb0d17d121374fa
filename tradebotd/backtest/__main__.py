import sys

from tradebotd.backtest.cli import main

sys.exit(main())
