#!/bin/sh
# /init of the test VM: mount the kernel filesystems, cgroup v2 with the
# memory and pids controllers for children, run the scenarios, power off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /var/log /var/lib /run && mount -t tmpfs tmpfs /var && mkdir -p /var/log /var/lib
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "+memory +pids" > /sys/fs/cgroup/cgroup.subtree_control
hostname vm
echo "VMTEST BOOTED $(cut -d' ' -f1 /proc/uptime)"
start=$(cut -d' ' -f1 /proc/uptime)
HOME=/root BATCHGUARD_TEST_SLOWDOWN=4 sh /scenarios.sh 2>&1
echo "VMTEST TIME boot=${start}s end=$(cut -d' ' -f1 /proc/uptime)s"
sync
poweroff -f
