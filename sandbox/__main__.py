import gc
import os
import sys

gc.disable()  # a one-shot process: collection pauses buy nothing

from .cli.main import main

code = main()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
