# ctest helper: fail unless the static library LIB holds device code (SASS) for every
# architecture in ARCHS (e.g. "80;90"). The slim CUDA kit has no cuobjdump, so read the
# ptxas command line that nvcc records next to each embedded cubin ("-arch sm_90 -m 64").
file(STRINGS ${LIB} found REGEX "-arch sm_[0-9]+")
foreach(arch ${ARCHS})
  string(REGEX REPLACE "-.*" "" arch "${arch}")  # 90-real -> 90
  if(NOT found MATCHES "-arch sm_${arch} ")
    message(FATAL_ERROR "no sm_${arch} device code in ${LIB}")
  endif()
  message(STATUS "sm_${arch}: device code present")
endforeach()
