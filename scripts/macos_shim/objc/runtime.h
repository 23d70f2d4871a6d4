// Stand-in for <objc/runtime.h>: the Objective-C runtime types and lookups metal-cpp calls.
#pragma once
#include <stdbool.h>

typedef struct objc_class* Class;
struct objc_object {
  Class isa;
};
typedef struct objc_object* id;
typedef struct objc_selector* SEL;
typedef struct objc_object Protocol;
typedef bool BOOL; // arm64 macOS: BOOL is bool

extern "C" {
Class objc_lookUpClass(const char* name);
Protocol* objc_getProtocol(const char* name);
SEL sel_registerName(const char* name);
}
