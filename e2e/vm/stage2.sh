# Second stage of the test guest, stored on the disk by the first VM and run by a VM that
# boots from a clone of the disk's snapshot. The first VM appends one `check MIB MD5` line per
# MiB it wrote, then `finish`.
bad=0
checked=0
check() {
    got=$(dd if=/dev/vda bs=1M skip=$1 count=1 2>/dev/null | md5sum | cut -d' ' -f1)
    [ "$got" = "$2" ] || { echo "GUEST: mismatch at $1"; bad=$((bad + 1)); }
    checked=$((checked + 1))
}
finish() {
    # The clone is writable: overwrite its first MiB and read it back uncached.
    dd if=/dev/urandom of=/tmp/new bs=1M count=1 2>/dev/null
    dd if=/tmp/new of=/dev/vda bs=1M conv=fsync 2>/dev/null || echo "GUEST: write to the clone failed"
    echo 3 > /proc/sys/vm/drop_caches
    want=$(md5sum < /tmp/new | cut -d' ' -f1)
    got=$(dd if=/dev/vda bs=1M count=1 2>/dev/null | md5sum | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "GUEST: mismatch after writing the clone"; bad=$((bad + 1)); }
    if [ $bad -eq 0 ]; then echo "GUEST: RESULT OK clone verified $checked"; else echo "GUEST: RESULT FAIL $bad"; fi
}
