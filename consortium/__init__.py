"""The consortium harness: the only package that knows every side. `fedchest` (the admin CLI), the synthetic and
real demos, Flower simulation of the apps, a local multi-process deployment and the dashboard launcher live here;
``server/`` (ServerApp, strategy, registry) and ``client/`` (ClientApp, site CLI) never import each other, and
neither imports this package."""
