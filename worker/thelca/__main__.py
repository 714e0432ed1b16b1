import sys

from thelca.cli.main import main

sys.exit(main())
