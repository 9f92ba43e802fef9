# The users service from a static binary built on the host (scripts/lib/podman.sh
# build_images): no base image to pull, so it builds without any registry.
# /healthcheck is the same probe the distroless image has (compose.yml uses it).
FROM scratch
COPY users healthcheck /
ENV TEAM_NAME=rideshare-dbaas \
    USERS_BIND=0.0.0.0:80
EXPOSE 80
ENTRYPOINT ["/users"]
