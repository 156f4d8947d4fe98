import sys

from dllm_asr.cli import main

sys.exit(main())
