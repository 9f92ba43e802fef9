#!/bin/sh
# A standalone ZooKeeper configured from the official image's variables.
set -eu
cat > /conf/zoo.cfg <<CFG
dataDir=/data
dataLogDir=/datalog
clientPort=2181
tickTime=${ZOO_TICK_TIME:-2000}
initLimit=${ZOO_INIT_LIMIT:-5}
syncLimit=${ZOO_SYNC_LIMIT:-2}
maxClientCnxns=${ZOO_MAX_CLIENT_CNXNS:-60}
autopurge.snapRetainCount=${ZOO_AUTOPURGE_SNAPRETAINCOUNT:-3}
autopurge.purgeInterval=${ZOO_AUTOPURGE_PURGEINTERVAL:-0}
4lw.commands.whitelist=${ZOO_4LW_COMMANDS_WHITELIST:-srvr}
admin.enableServer=false
CFG
chown -R zookeeper:zookeeper /data /datalog /conf
# slf4j-simple logs to stderr (without it ZooKeeper logs nothing).
cp=/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar
# shellcheck disable=SC2086 # JVMFLAGS is a list of options, as in the official image
exec setpriv --reuid=zookeeper --regid=zookeeper --init-groups -- java ${JVMFLAGS:--Xmx256m} -cp "$cp" \
  org.apache.zookeeper.server.quorum.QuorumPeerMain /conf/zoo.cfg
