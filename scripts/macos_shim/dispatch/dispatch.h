// Stand-in for <dispatch/dispatch.h>: the opaque GCD handles metal-cpp passes through.
#pragma once

typedef struct dispatch_queue_s* dispatch_queue_t;
typedef struct dispatch_data_s* dispatch_data_t;
