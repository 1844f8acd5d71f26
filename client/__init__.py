"""The hospital side of fedchest: site config, data sources, local index and cache, local training,
the Flower ClientApp and the synthetic-consortium generator. Never imports `server`."""

import time as _time

LOAD_STARTED = _time.time()  # when this process began importing the site's code (client/timeline.py reports it)
