// Stand-in for <IOSurface/IOSurfaceRef.h>: the opaque surface handle metal-cpp passes through.
#pragma once

typedef struct __IOSurface* IOSurfaceRef;
