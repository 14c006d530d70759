# Turns every file in ASSET_DIR into a C array in OUTPUT, with a table
# srv_assets[] of {name, data, size} (see server_internal.h). Run as
#   cmake -DASSET_DIR=dir -DOUTPUT=file.c -P embed_assets.cmake
# The build runs it again whenever an asset changes, so the server binary
# always carries the current HTML, JavaScript and OpenAPI description.
file(GLOB assets RELATIVE "${ASSET_DIR}" "${ASSET_DIR}/*")
list(SORT assets)
set(body "/* Generated from src/server/assets by embed_assets.cmake; do not edit. */\n")
string(APPEND body "#include \"server/server_internal.h\"\n\n")
set(table "")
set(index 0)
foreach(name ${assets})
  file(READ "${ASSET_DIR}/${name}" hex HEX)
  string(LENGTH "${hex}" hex_len)
  math(EXPR size "${hex_len} / 2")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  string(REGEX REPLACE "((0x[0-9a-f][0-9a-f],){16})" "\\1\n" bytes "${bytes}")
  # A trailing NUL lets the data be used as a C string too; size excludes it.
  string(APPEND body "static const unsigned char asset_${index}[] = {\n${bytes}0x00};\n")
  string(APPEND table "    {\"${name}\", asset_${index}, ${size}},\n")
  math(EXPR index "${index} + 1")
endforeach()
string(APPEND body "\nconst srv_asset srv_assets[] = {\n${table}};\n")
string(APPEND body "const size_t srv_asset_count = sizeof srv_assets / sizeof srv_assets[0];\n")
file(WRITE "${OUTPUT}.tmp" "${body}")
file(RENAME "${OUTPUT}.tmp" "${OUTPUT}")
