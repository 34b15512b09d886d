// <cub/cub.cuh> for the SIMT harness build: the parts of CUB the .cu files use, on the host.
#pragma once
#include "../../cub_host.h"
