# Installing plait (`cmake --install build --prefix DIR`):
#   DIR/bin/               plait-agent, plait-aggregator, plait-sim
#   DIR/include/plait/     the public headers
#   DIR/lib/libplait.a     ONE static library for embedding the device side: the
#                          engine and agent (client/), the wire format (proto/)
#                          and the shared code (lib/)
#   DIR/lib/pkgconfig/plait.pc   its compile and link flags, system libraries included
# An app then builds with (docs/client-api.md):
#   cc app.c $(PKG_CONFIG_PATH=DIR/lib/pkgconfig pkg-config --cflags --libs plait) -o app
include(GNUInstallDirs)

add_library(plait STATIC $<TARGET_OBJECTS:plait_lib> $<TARGET_OBJECTS:plait_wire> $<TARGET_OBJECTS:plait_client>)
target_include_directories(plait PUBLIC $<BUILD_INTERFACE:${CMAKE_SOURCE_DIR}/include>
                           $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
target_link_libraries(plait PUBLIC plait_mbedtls PkgConfig::SQLITE3 PkgConfig::PROTOBUFC Threads::Threads ${MATH_LIB})

set(PLAIT_PC_PREFIX "\${pcfiledir}/../..") # relocatable: the .pc finds the tree it was installed in
configure_file(${CMAKE_CURRENT_LIST_DIR}/plait.pc.in ${CMAKE_BINARY_DIR}/plait.pc @ONLY)

install(TARGETS plait ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY ${CMAKE_SOURCE_DIR}/include/plait DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.h")
install(FILES ${CMAKE_BINARY_DIR}/plait.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
foreach(bin plait-agent plait-aggregator plait-sim)
  if(TARGET ${bin})
    install(TARGETS ${bin} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  endif()
endforeach()
