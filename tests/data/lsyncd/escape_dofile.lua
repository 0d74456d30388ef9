dofile("@BASE@/payload.lua")
