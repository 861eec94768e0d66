# Hello in Python: argv[1] (the task's first input) is the name, env GREETING the greeting.
import os
import sys

name = sys.argv[1] if len(sys.argv) > 1 else "world"
print(f"{os.environ.get('GREETING', 'Hello')}, {name}! (from Python)")
