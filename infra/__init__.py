"""Infrastructure: the embedded local stack launcher behind ``maas up`` (``infra.local_stack``,
``infra.embedded``), the docker-compose file, and the Kubernetes manifests."""
