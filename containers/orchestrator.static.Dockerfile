# The orchestrator from a static binary built on the host (scripts/lib/podman.sh
# build_images): no base image to pull, so it builds without any registry.
# /healthcheck is the same probe the distroless image has (compose.yml uses it).
FROM scratch
COPY orchestrator healthcheck /
ENV TEAM_NAME=rideshare-dbaas \
    DBAAS_BIND=0.0.0.0:80 \
    DBAAS_RUNTIME=docker
EXPOSE 80
ENTRYPOINT ["/orchestrator"]
