#!/bin/bash
# Stage 2 of the VM tier's guest: PID 1 after switch_root, on the host's tree with a tmpfs
# overlay. Brings lo up, loads the kernel modules listed in $KRVM_JOB/modules with the host's
# modprobe, runs $KRVM_JOB/cmd.sh with its stdout and stderr in the job directory, writes the exit
# status to $KRVM_JOB/rc (last, so a status means the rest is complete) and powers the VM off.
# $KRVM_JOB/uptime gets the guest's uptime at its start, after modprobe and at the command's end.

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 KUBE_ROUTER_VM_GUEST=1
job=$KRVM_JOB
read -r start _ </proc/uptime

ip link set lo up
: >"$job/stdout"
: >"$job/stderr"
modules=()
if [[ -s $job/modules ]]; then
  mapfile -t modules <"$job/modules"
fi
if ((${#modules[@]})) && ! modprobe -a "${modules[@]}" 2>>"$job/stderr"; then
  echo "krvm stage2: modprobe ${modules[*]} failed" >>"$job/stderr"
  rc=1
else
  read -r loaded _ </proc/uptime
  bash "$job/cmd.sh" >>"$job/stdout" 2>>"$job/stderr" </dev/null
  rc=$?
fi

read -r end _ </proc/uptime
echo "$start ${loaded:-$start} $end" >"$job/uptime"
echo "$rc" >"$job/rc"
sync
echo o >/proc/sysrq-trigger
sleep 30
