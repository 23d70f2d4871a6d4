// Stand-in for <CoreFoundation/CoreFoundation.h>: the one type metal-cpp takes
// from it, and the C headers the real one includes that metal-cpp relies on
// (<math.h>: INFINITY in MTLAccelerationStructureTypes.hpp).
#pragma once
#include <math.h>

typedef double CFTimeInterval;
