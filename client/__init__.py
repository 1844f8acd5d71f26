"""The hospital side of fedchest: site config, data sources, local index and cache, local training,
the Flower ClientApp and the synthetic-consortium generator. Never imports `server`."""
