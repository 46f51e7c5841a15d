"""The imputation engine: claim a job, run CodeBrain over its study, write the synthetic series (``worker.py``);
which weights it runs and proof they are the shipped ones (``weights.py``); ``bench inference`` (``bench.py``)."""
