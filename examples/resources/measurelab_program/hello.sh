#!/bin/sh
# A one-shot measurement program: report where it runs and exit 0.
echo "hello from VM ${MEASURELAB_VM_ID:-?} (deployment ${MEASURELAB_DEPLOYMENT_ID:-?}): $*"
ip -4 -o addr show 2>/dev/null | awk '{print $2, $4}'
