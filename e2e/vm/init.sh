#!/bin/busybox sh
# Init of the test guest: load the virtio disk driver, write ROUNDS MiB of random data to
# /dev/vda with a sync after each, read it all back uncached, report on the serial console.
# Then store a second stage (stage2.sh and the checksums) on the disk after the data. Booted
# with `sheepdog.clone` on the kernel command line (its disk a clone of the first VM's disk),
# it instead runs the second stage found on the disk.
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
if grep -q sheepdog.clone /proc/cmdline; then
    echo "GUEST: booted from the clone"
    dd if=/dev/vda bs=1M skip=$ROUNDS count=1 2>/dev/null | tr -d '\000' > /tmp/stage2.sh
    grep -q '^finish$' /tmp/stage2.sh || { echo "GUEST: RESULT FAIL no second stage on the disk"; poweroff -f; }
    . /tmp/stage2.sh
    poweroff -f
fi
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
{
    cat /stage2.sh
    i=0
    while [ $i -lt $ROUNDS ]; do echo "check $i $(cat /tmp/sum.$i)"; i=$((i + 1)); done
    echo finish
} > /tmp/stage2.sh
dd if=/tmp/stage2.sh of=/dev/vda bs=1M seek=$ROUNDS conv=fsync 2>/dev/null || { echo "GUEST: write of stage 2 failed"; bad=$((bad + 1)); }
if [ $bad -eq 0 ]; then echo "GUEST: RESULT OK $ROUNDS"; else echo "GUEST: RESULT FAIL $bad"; fi
poweroff -f
