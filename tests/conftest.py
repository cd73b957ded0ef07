"""Every test runs offline: nothing may read weights or datasets from a hub.

Set before any test module imports transformers/datasets/huggingface_hub (they read these at
import), and inherited by every subprocess a test starts (train workers, Prefect workers).
"""

import os

for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_name] = "1"
