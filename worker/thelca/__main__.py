import sys

from thelca.cli import main

sys.exit(main())
