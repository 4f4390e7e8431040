#!/bin/busybox sh
# Init of the test guest: load the virtio disk driver, write ROUNDS MiB of random data to
# /dev/vda with a sync after each, read it all back uncached, report on the serial console.
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
    insmod /lib/$m.ko || echo "GUEST: cannot load $m"
done
n=0
while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
[ -b /dev/vda ] || { echo "GUEST: RESULT FAIL no /dev/vda"; poweroff -f; }
ROUNDS=$(cat /rounds)
echo "GUEST: disk ready, writing $ROUNDS MiB"
i=0
while [ $i -lt $ROUNDS ]; do
    dd if=/dev/urandom of=/tmp/chunk bs=1M count=1 2>/dev/null
    dd if=/tmp/chunk of=/dev/vda bs=1M seek=$i conv=fsync 2>/dev/null || echo "GUEST: write $i failed"
    md5sum < /tmp/chunk | cut -d' ' -f1 > /tmp/sum.$i
    echo "GUEST: wrote $i"
    i=$((i + 1))
done
sync
echo 3 > /proc/sys/vm/drop_caches
bad=0
i=0
while [ $i -lt $ROUNDS ]; do
    got=$(dd if=/dev/vda bs=1M skip=$i count=1 2>/dev/null | md5sum | cut -d' ' -f1)
    [ "$got" = "$(cat /tmp/sum.$i)" ] || { echo "GUEST: mismatch at $i"; bad=$((bad + 1)); }
    i=$((i + 1))
done
if [ $bad -eq 0 ]; then echo "GUEST: RESULT OK $ROUNDS"; else echo "GUEST: RESULT FAIL $bad"; fi
poweroff -f
